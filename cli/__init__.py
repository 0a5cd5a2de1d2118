"""The dcollapse command line (installed as ``dcollapse.cli``). Thin: parses options, calls the library, renders."""
