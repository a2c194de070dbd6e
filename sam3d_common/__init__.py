"""What the app layer (serve_app) and the stages (deployments) share: configuration models,
stage errors, the voxel frame type, the artifact store and device/dtype resolution.

Imports nothing from serve_app or deployments, so both layers can depend on it.
"""
