# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`trl-opd demo`: an offline, CPU-sized end-to-end run on a synthetic arithmetic reasoning task."""
