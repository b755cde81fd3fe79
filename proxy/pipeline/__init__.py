"""The request pipeline: typed stages that rewrite a request before the upstream and learn after it."""
