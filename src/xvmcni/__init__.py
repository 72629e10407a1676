"""xvm-cni: one network for containers across many Linux hosts."""
