"""The HTTP routes, one router per OpenAPI tag."""
