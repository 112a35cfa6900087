"""ParallelRunner and what it is made of: tasks, slots, executors, events, retry, tuning."""
