"""The Faust app, its topics and agents: the streaming side of fluxstream."""
