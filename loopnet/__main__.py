from loopnet.cli import main

raise SystemExit(main())
