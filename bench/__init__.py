"""revsync benchmarks: `make bench SCENARIO=<name>` (or `python -m bench <name>`)."""
