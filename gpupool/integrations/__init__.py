"""Optional integrations with other libraries, each behind its own extra.

Importing this package imports none of them; each submodule imports its
library lazily and names the extra to install when it is missing.
"""
