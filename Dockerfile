# The gradchain image: nothing but the two statically linked binaries and the
# shipped datasets. No base image is pulled (the build machine has no
# registry); scripts/devnet builds the binaries and the context.
FROM scratch
COPY bin/gradchain-node /gradchain-node
COPY bin/gradchain-trainer /gradchain-trainer
COPY datasets /datasets
# p2p, and the HTTP API (--http 0.0.0.0:9701 with a token in compose).
EXPOSE 9700 9701
ENTRYPOINT ["/gradchain-node"]
CMD ["run", "--chain", "devnet", "--data-dir", "/data"]
