"""One module per kind of batch an agent handles; ``streams.agents`` says which agent runs which.

Each handler is built once per agent from the shared ``streams.pipeline.Pipeline`` and called with
a batch of raw records; it returns once the batch's effects are durable.
"""
