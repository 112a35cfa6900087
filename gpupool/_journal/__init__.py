"""The task journal: one SQLite (WAL) file of durable task states, and the runner's side of it."""
