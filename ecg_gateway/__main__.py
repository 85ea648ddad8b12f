from ecg_gateway.cli import main

raise SystemExit(main())
