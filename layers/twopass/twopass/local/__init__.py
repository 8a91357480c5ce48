"""The embedded local stack: AWS emulator, resources from template.yaml, API and worker on loopback."""
