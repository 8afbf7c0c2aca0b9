"""The contracts every part of pspnet-cluster agrees on: the lowest floor.

Modules here import nothing else of the project, so the trainer (a separate process), the cluster
description, monitoring and the orchestrator can all depend on them without depending on each other.
"""
