from jpeglm.cli import main

raise SystemExit(main())
