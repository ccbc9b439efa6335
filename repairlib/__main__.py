from repairlib.cli import main

raise SystemExit(main())
