"""Share and forward mechanisms, apart from providers: a provider says which it offers."""
