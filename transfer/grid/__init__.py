"""Grids: recipe loading and validation, the experiment (a plan of runs, one run = spec and
prepared data in, record out), the executors (local, processes, Ray) and the results folder.

May import: every stage below (common, backbones, data, evaluate, train); never a report or a CLI.
"""
