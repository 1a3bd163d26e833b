# A model as an image, for deploy/k8s: the Deployment's init container copies it into the pod.
#   faultwatch train normal.csv --out build/model.fwm
#   docker build -f deploy/model.Dockerfile -t registry.example.com/faultwatch-model:1 build/
# A new model is a new tag; `faultwatch inspect build/model.fwm` shows its version.
FROM busybox:1.37
COPY model.fwm /model/model.fwm
