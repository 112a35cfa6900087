"""The core: requests, the scheduling state machine, scoring and policies.

No I/O, no clocks, no anyio: every input is a call and every decision a return value."""
