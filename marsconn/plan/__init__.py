"""The deciding half: sources, settings, server lists, endpoints, capability, provenance, plan.

Nothing here opens a connection or imports the run half or the wire protocols.
"""
