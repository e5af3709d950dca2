"""The flowtrack CLI as a client: connection options, rendering, the campaign
simulation and the commands that use them."""
