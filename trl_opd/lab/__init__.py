# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`trl-opd lab`: multi-seed comparisons of the methods on offline, CPU-sized worlds (see `trl_opd.lab.run`)."""
