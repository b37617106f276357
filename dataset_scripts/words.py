"""Word pools for hop-chain prompts.

``VALUE_WORDS`` are the lowercase English words a chain can resolve to. Its last
40 entries (``HELDOUT_VALUE_WORDS``) are never used as training values, so an
evaluation split built from them checks that the model follows pointers rather
than memorising which words tend to be answers.

``VARIABLE_NAMES`` are the uppercase names a prompt may assign: ``A``..``Z``
followed by ``AA``..``ZZ`` (702 names). Names are uppercase and values lowercase,
so the two pools can never collide.
"""

from itertools import product
from string import ascii_uppercase

VALUE_WORDS = (
    # animals
    "dog", "cat", "horse", "cow", "sheep", "goat", "pig", "duck", "goose", "hen",
    "rabbit", "mouse", "rat", "fox", "wolf", "bear", "lion", "tiger", "zebra", "giraffe",
    "camel", "monkey", "panda", "koala", "otter", "beaver", "badger", "moose", "deer", "bison",
    "eagle", "hawk", "owl", "crow", "swan", "parrot", "robin", "sparrow", "pigeon", "penguin",
    "shark", "whale", "dolphin", "salmon", "trout", "crab", "lobster", "octopus", "squid", "seal",
    "frog", "toad", "snake", "lizard", "turtle", "spider", "ant", "bee", "wasp", "moth",
    # objects
    "chair", "table", "lamp", "clock", "mirror", "pillow", "blanket", "bucket", "ladder", "hammer",
    "nail", "shovel", "rope", "basket", "candle", "kettle", "spoon", "fork", "knife", "plate",
    "bowl", "cup", "bottle", "jar", "box", "bag", "wallet", "key", "lock", "door",
    "window", "roof", "wall", "fence", "gate", "bridge", "tower", "castle", "tent", "boat",
    "ship", "train", "truck", "bicycle", "wagon", "rocket", "kite", "drum", "flute", "violin",
    "guitar", "piano", "trumpet", "bell", "whistle", "book", "pencil", "paper", "envelope", "stamp",
    "coin", "ring", "crown", "hat", "scarf", "glove", "boot", "shoe", "sock", "jacket",
    # colours
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white",
    "grey", "silver", "gold", "violet", "indigo", "crimson", "scarlet", "amber", "ivory", "teal",
    # foods
    "apple", "banana", "cherry", "grape", "lemon", "lime", "mango", "melon", "peach", "pear",
    "plum", "berry", "carrot", "potato", "tomato", "onion", "garlic", "pepper", "cabbage", "lettuce",
    "bread", "butter", "cheese", "cream", "honey", "sugar", "salt", "rice", "pasta", "noodle",
    "soup", "salad", "pizza", "cookie", "cake", "pie", "muffin", "waffle", "pancake", "candy",
    # nature and places
    "river", "lake", "ocean", "island", "mountain", "valley", "forest", "desert", "meadow", "canyon",
    "cloud", "rain", "snow", "storm", "thunder", "rainbow", "sun", "moon", "star", "comet",
    "stone", "pebble", "sand", "clay", "leaf", "branch", "root", "seed", "flower", "tulip",
    # held out: the final 40 words are never used as training values
    "daisy", "rose", "lily", "orchid", "cactus", "fern", "moss", "acorn", "pine", "maple",
    "oak", "willow", "coral", "shell", "pearl", "ruby", "emerald", "sapphire", "diamond", "marble",
    "anchor", "compass", "lantern", "helmet", "shield", "sword", "arrow", "saddle", "barrel", "wheel",
    "walnut", "almond", "peanut", "olive", "radish", "turnip", "celery", "spinach", "pumpkin", "squash",
)

HELDOUT_VALUE_WORDS = VALUE_WORDS[-40:]
TRAIN_VALUE_WORDS = VALUE_WORDS[:-40]

VARIABLE_NAMES = tuple(ascii_uppercase) + tuple(
    first + second for first, second in product(ascii_uppercase, repeat=2)
)
