"""Providers: the hypervisors and machine managers vmkit drives, each behind ``Provider``."""
