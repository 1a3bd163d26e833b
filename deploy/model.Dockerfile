# Models as an image, for deploy/k8s/models: its job copies them into the models volume.
#   mkdir build/models && faultwatch train pump.csv --machines 'pump-*' --out build/models/pump.fwm
#   (candidates to shadow, if any: build/models/shadow/*.fwm)
#   docker build -f deploy/model.Dockerfile -t registry.example.com/faultwatch-model:2 build/models/
# A new set of models is a new tag; `faultwatch inspect` shows each file's version and patterns.
FROM busybox:1.37
COPY . /model/
