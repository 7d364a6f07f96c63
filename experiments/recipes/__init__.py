"""Recipes: one module per published method, each a sequence of stage functions over heads/ losses."""
