from featbank.experiments.cli import main

raise SystemExit(main())
