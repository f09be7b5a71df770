"""The feature spec: its schema, validation and the strict YAML loader every config uses."""
