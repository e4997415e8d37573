"""skiff's BPF steering: the sk_lookup program (skiff.bpf.c), its libbpf loader and the port-map diffing.

`bpf.loader` is the supervisor's entry point (`probe`, `Steering`); `bpf.ports` holds the pure diff between
the port map the kernel has and the one the config wants; `bpf.libbpf` and `bpf.pinning` are the thin I/O
underneath (ctypes calls into the system libbpf, bpffs pins and the instance lock).
"""
