"""The per-VM host agent: one process that owns the live pieces SSH-based mechanisms need.

Reverse-sshfs shares and SSH-tunnel forwards are not state a hypervisor keeps for us; they
live as long as a process pumps bytes. The agent is that process: started on first need,
one per VM, with its pid file, socket and log in the VM's folder. vmkit commands talk to it
over a unix socket with one JSON request and one JSON answer per connection.
"""
