# Entry points of the customer data platform. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

STACK := scripts/stack.sh
UV := $(STACK) uv
PYTEST_ARGS ?=

.PHONY: help up down status install infra test lint fmt bench logs demo

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

up: ## install what is missing and start the whole local stack
	$(STACK) up

down: ## stop the local stack
	$(STACK) down

status: ## what runs, and the readiness of each service
	$(STACK) status

install: ## install what is missing (uv, .venv, Prometheus, docker-compose, Kafka)
	$(STACK) install

infra: ## start only Kafka and PostgreSQL
	$(STACK) infra

test: ## the whole test suite against the real Kafka and PostgreSQL (PYTEST_ARGS=...)
	$(STACK) infra
	$(UV) run --frozen pytest $(PYTEST_ARGS)

lint: ## ruff and mypy
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy libs services

fmt: ## format the code and apply the safe lint fixes
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

bench: ## the benchmarks (only some: make bench BENCH="segment profile")
	$(UV) run --frozen python benchmarks/run.py $(BENCH)

demo: ## send a small synthetic shop through the running stack and print profile URLs
	$(UV) run --frozen cdp-shop --people 40 --truth .run/shop-truth.json --show-profiles 5

logs: ## follow the logs of the local stack (SERVICE=ingest for one)
	tail -n 100 -F .run/logs/$(or $(SERVICE),*).log
