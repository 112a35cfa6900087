"""The machine-wide ledger: one SQLite file and a lock per member, shared by every pool on the machine."""
