"""Search, compression, export and the `hwnas` command line (grows with each stage of the pipeline)."""
