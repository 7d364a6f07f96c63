"""featbank: a video feature store plus lightweight heads.

The subpackages live in top-level folders of the repository and are mapped by
setuptools: ``featbank.extract`` (extract/), ``featbank.store`` (store/),
``featbank.heads`` (heads/) and ``featbank.experiments`` (experiments/).
"""

__version__ = "0.1.0"
