"""The host side: running programs, processes, ports, hardware virtualization and the fallback policy."""
