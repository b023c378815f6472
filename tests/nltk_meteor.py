"""Reference values from NLTK for tests/meteor.test.ts.

Reads one JSON object on stdin:
  {"cases": [{"references": [[word, ...], ...], "hypothesis": [word, ...]}, ...],
   "stems": [word, ...], "synsets": [word, ...]}
and writes one JSON object on stdout:
  {"version": nltk.__version__,
   "scores": [nltk.translate.meteor_score.meteor_score(references, hypothesis), ...],
   "stems": [PorterStemmer().stem(word), ...],
   "synsets": [[[pos, offset, [lemma name, ...]], ...] for each word of wordnet.synsets(word)]}
NLTK_DATA must point at a directory holding corpora/wordnet.
"""
import json
import sys

import nltk
from nltk.corpus import wordnet
from nltk.stem.porter import PorterStemmer
from nltk.translate.meteor_score import meteor_score


def main():
    request = json.load(sys.stdin)
    stemmer = PorterStemmer()
    result = {
        "version": nltk.__version__,
        "scores": [meteor_score(case["references"], case["hypothesis"]) for case in request["cases"]],
        "stems": [stemmer.stem(word) for word in request["stems"]],
        "synsets": [
            [[synset.pos(), synset.offset(), synset.lemma_names()] for synset in wordnet.synsets(word)]
            for word in request["synsets"]
        ],
    }
    json.dump(result, sys.stdout)


main()
