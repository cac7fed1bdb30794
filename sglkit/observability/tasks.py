"""invoke obs.*"""

from invoke import Collection

ns = Collection("obs")
