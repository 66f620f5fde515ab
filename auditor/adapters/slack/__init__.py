"""Slack delivery of drift alerts: bot-token WebClient (threads, updates) or incoming webhook."""
