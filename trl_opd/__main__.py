# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`python -m trl_opd ...` (and `accelerate launch -m trl_opd train ...`)."""

from .cli import main


raise SystemExit(main())
