"""The one error BPF steering raises, importable without loading libbpf (reuseport mode needs no libbpf)."""


class SteeringError(Exception):
    """BPF steering cannot be set up or changed; str() is one line for the operator."""
