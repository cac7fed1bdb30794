"""invoke cache.*"""

from invoke import Collection

ns = Collection("cache")
