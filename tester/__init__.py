"""The proxy testing program and the echo target it (and the demo) use."""
