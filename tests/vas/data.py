"""Tiny prompt sets for the VAS tests: sentiment-laden topics so that base samples vary in reward."""

from __future__ import annotations

TRAIN_PROMPTS = [
    "Write one sentence about a sunny holiday at the beach.",
    "Write one sentence about losing your wallet.",
    "Describe a birthday party with friends in one sentence.",
    "Describe a car accident in one sentence.",
    "Write one sentence about your favorite food.",
    "Write one sentence about a rainy, cold Monday.",
    "Describe a wedding in one sentence.",
    "Describe being sick with the flu in one sentence.",
    "Write one sentence about a puppy.",
    "Write one sentence about a broken phone.",
    "Describe winning a prize in one sentence.",
    "Describe failing an exam in one sentence.",
    "Write one sentence about a garden in spring.",
    "Write one sentence about a traffic jam.",
    "Describe a walk in the park in one sentence.",
    "Describe a storm that damaged a house in one sentence.",
    "Write one sentence about a good friend.",
    "Write one sentence about a noisy neighbor.",
    "Describe a concert in one sentence.",
    "Describe a long wait at the hospital in one sentence.",
]

HELD_OUT_PROMPTS = [
    "Write one sentence about your weekend.",
    "Describe your morning in one sentence.",
    "Write one sentence about a trip to the city.",
    "Describe a visit to your family in one sentence.",
    "Write one sentence about school.",
    "Describe a day at work in one sentence.",
    "Write one sentence about the weather today.",
    "Describe a meal at a restaurant in one sentence.",
    "Write one sentence about a movie you saw.",
    "Describe a train journey in one sentence.",
    "Write one sentence about your neighborhood.",
    "Describe a shopping trip in one sentence.",
]

# Held-out continuations with known sentiment, for ranking: (prompt, text).
RANKING_PAIRS = [
    ("Describe your evening.", "It was a wonderful, happy evening with great friends and lovely food."),
    ("Describe your evening.", "It was a terrible, sad evening full of pain and bad news."),
    ("How was the trip?", "The trip was amazing and fun; we enjoyed every beautiful moment."),
    ("How was the trip?", "The trip was awful; we were sick, lost and miserable the whole time."),
    ("Tell me about the new job.", "I love the new job, my team is kind, helpful and friendly."),
    ("Tell me about the new job.", "I hate the new job, it is boring, stressful and the boss is cruel."),
    ("What happened at the game?", "We won, the crowd was cheerful and everyone was proud."),
    ("What happened at the game?", "We lost badly, it was a disaster and everyone was upset."),
    ("How is your garden?", "My garden is bright and beautiful, full of fresh flowers."),
    ("How is your garden?", "My garden is dead, the plants failed and it looks ugly."),
    ("How did the exam go?", "The exam went great, I felt calm and the result was excellent."),
    ("How did the exam go?", "The exam went badly, I was worried and the result was poor."),
]
