"""skiffctl: the operator's CLI for a skiff fleet that follows one etcd prefix (see `python -m skiffctl -h`)."""
