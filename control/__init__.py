"""The supervisor process: listening sockets, worker processes, reloads, signals. No data path here."""
