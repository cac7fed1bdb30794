"""The devcontainer: Dockerfile rendering, offline base image, build, and lifecycle."""
