"""invoke container.*"""

from invoke import Collection

ns = Collection("container")
