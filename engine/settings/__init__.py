"""Settings: the option store, the option definitions of each group, the A1111 option/section tables, command-line flags and folders."""
