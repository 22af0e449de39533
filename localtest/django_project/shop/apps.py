from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self):
        from auditlog.registry import auditlog

        from .models import Product

        auditlog.register(Product)
