"""Docker inside a VM: docker-py over SSH and the local socket endpoint (client), images, `vmkit env`."""
