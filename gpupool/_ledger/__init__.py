"""The machine-wide ledger: every pool on a machine joins it, with no daemon (docs/machine.md)."""
