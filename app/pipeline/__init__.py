"""The request pipeline: a generating request on its way from the route to an engine and back."""
